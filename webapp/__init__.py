"""The newsroom app: editors write stories, pick images and publish them to the watcher.

Publishing goes through the watcher's own intake (``cluster_manager.submit.submit_story``) and
progress is read from the per-story status records (``cluster_manager.status.read_status``), so
the app and the command line ``python -m cluster_manager submit`` behave alike.
"""
