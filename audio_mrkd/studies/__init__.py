"""Studies: many runs of one recipe — several seeds (:mod:`~audio_mrkd.studies.sweep`), and ablations of variants x
folds x seeds paired against a reference (:mod:`~audio_mrkd.studies.ablation`), run locally or on a Ray cluster,
recorded, summarised and fitted to a time budget."""
