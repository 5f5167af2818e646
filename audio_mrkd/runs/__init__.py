"""A run folder and nothing else: :class:`~audio_mrkd.runs.run.Run` reads and writes it, and is the one module that
names its files; :mod:`~audio_mrkd.runs.checkpoint` is the format of the checkpoints in it."""
