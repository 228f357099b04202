"""`kubetune dashboard`: a page on 127.0.0.1 listing the FineTuneJobs the user can see, kept current by watches
(server.py), drawn by a little plain JavaScript with inline SVG charts (static/): no build step, nothing fetched
from outside the machine."""
