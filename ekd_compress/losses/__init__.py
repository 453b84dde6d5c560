"""Training losses, one class per loss with its formula and reference, registered by name.

ctc      CTCLoss            "ctc"         hard-label CTC (Graves et al. 2006)
guide    GuideAlignmentLoss "guide_ce"    frame CE to a guide's forced alignment (Kurata & Audhkhasi 2019)
         ctc_forced_align                 Viterbi CTC forced alignment (numpy)
essence  EssenceKDLoss      "essence_kd"  T²·KL(essence ‖ student) from sparse top-k targets
                                          (arXiv 1906.10834; k = V is KD, Hinton et al. 2015)
         DistillationLoss                 λ·CTC + (1 − λ)·T²·KL, the student loss as a composition
compose  WeightedLoss, LOSSES             Σ w_name · L_name over the registered losses
"""
