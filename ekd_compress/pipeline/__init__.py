"""The `distill` pipeline: resumable stages from data to results.

distill.py   the stages in order and their keys (`run_distill`)
plan.py      the stage list and model names (written once), and what the keys hash
context.py   the run's Context and each stage's typed result
stages.py    StageRunner: skip a stage whose key is unchanged, markers in EXP/stages/
teacher.py   data, features, the guide's alignment, coincidence, the fused ensemble
students.py  essence targets, one TrainJob per student, the evaluation -> results.json
"""
