"""The teacher ensemble: fusion, essence selection, spike-coincidence checks, the top-k cache.

fusion       fuse_posteriors, FusedEnsemble   probability-domain average; an ensemble is a model
essence      select_essence, cumulative_topk_mass, blank_argmax_share
coincidence  spike_coincidence, corpus_coincidence, check_coincidence, CoincidenceError
cache        EssenceCache, CacheMismatchError (numpy only, no torch)
"""
