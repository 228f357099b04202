"""One self-contained module per spec.technique value.

Each exposes `apply(model, spec, task) -> model` (only the technique's parameters require grad
afterwards) and, where loading differs, `load_kwargs(spec) -> dict` for `from_pretrained`;
`save(model, out_dir)` where the result is not saved with `model.save_pretrained`.
`kubetune_trainer.modeling` picks the module from spec.technique.
"""
