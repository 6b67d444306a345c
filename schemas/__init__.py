"""Event and result contracts shared by producers and the pipeline."""
