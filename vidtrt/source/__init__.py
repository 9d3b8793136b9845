"""Layer 2: where weights come from: checkpoint folders (diffusers and official layouts), the
embedded presets, and :class:`~vidtrt.source.model_source.ModelSource`, a model resolved once."""
