"""The headless runner by role: ``graph`` (reading and filling an API-format workflow, which models it
needs), ``client`` (the pack's one HTTP client for ComfyUI and the job it drives) and ``launcher``
(a private ComfyUI started for one job, with its start-up failures diagnosed). Standard library only;
``nodes/workflow_runner.py`` is the runner's public face that the scripts import.

A set of photos from one command (scripts/run_catalogue.py): ``catalogue`` (the photos from a folder, glob
or CSV; the results manifest a rerun resumes from), ``catalogue_run`` (the set through one ComfyUI, the next
job queued, with the progress line), ``catalogue_api`` (the set through the FASHN-compatible API),
``progress_ws`` (ComfyUI's step progress from its websocket), ``contact_sheet`` (the review page) and
``consistency`` (each output's identity to the set's face, drifted ones flagged; uses the pack's OpenCV
face analyser, so it needs OpenCV where the runner runs)."""
