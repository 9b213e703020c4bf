"""The headless runner by role: ``graph`` (reading and filling an API-format workflow, which models it
needs), ``client`` (the pack's one HTTP client for ComfyUI and the job it drives) and ``launcher``
(a private ComfyUI started for one job, with its start-up failures diagnosed). Standard library only;
``nodes/workflow_runner.py`` is the runner's public face that the scripts import."""
