"""The data layer: templates, formats, sources, task and mixture specs on seqio."""
