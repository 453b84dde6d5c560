"""Training losses, one class per loss with its formula and reference.

ctc      CTCLoss                      hard-label CTC (Graves et al. 2006)
guide    GuideAlignmentLoss           frame CE to a guide's forced alignment (Kurata & Audhkhasi 2019)
         ctc_forced_align             Viterbi CTC forced alignment (numpy)
essence  EssenceKDLoss                T²·KL(essence ‖ student) from sparse top-k targets (arXiv 1906.10834)
         DistillationLoss             λ·CTC + (1 − λ)·T²·KL, the student loss
"""
