-- Argo CD health check for kubetune.dev/FineTuneJob.
-- Install: add under resource.customizations.health.kubetune.dev_FineTuneJob in argocd-cm
-- (see docs/gitops.md). Maps the operator's status onto Argo CD's health states.
-- Argo CD runs a custom check with only Lua's base, package and table libraries and os.time/os.date
-- (unless useOpenLibs is set): no string or math library, so text is built with `..` alone.
local hs = {}

local function condition(conditions, type)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == type then return c end
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator"
  return hs
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet seen the latest spec"
  return hs
end

local phase = status.phase
local ready = condition(status.conditions, "Ready")

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Training complete"
  if status.output ~= nil and status.output.modelUri ~= nil then
    hs.message = "Training complete: " .. status.output.modelUri
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = status.message or (ready and ready.message) or "Training failed"
  if ready ~= nil and ready.reason ~= nil then
    hs.message = ready.reason .. ": " .. hs.message
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  -- Only the user's own spec.suspend is named as the cause; anything else holding the Job (Kueue, the
  -- namespace cap) is told by the operator's Suspended condition.
  local suspended = condition(status.conditions, "Suspended")
  if obj.spec ~= nil and obj.spec.suspend == true then
    hs.message = "Suspended (spec.suspend: true)"
  elseif suspended ~= nil and suspended.message ~= nil and suspended.message ~= "" then
    hs.message = "Suspended: " .. suspended.message
  else
    hs.message = "Suspended"
  end
elseif phase == "Running" and status.progress ~= nil and status.progress.totalSteps ~= nil
    and status.progress.totalSteps > 0 then
  local progress = status.progress
  hs.status = "Progressing"
  hs.message = "Training: step " .. (progress.step or 0) .. "/" .. progress.totalSteps
    .. " (" .. (progress.percent or 0) .. "%)"
else
  hs.status = "Progressing"
  hs.message = phase
  if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
    hs.message = phase .. ": " .. ready.message
  end
end
return hs
