"""Downstream evaluation: fine-tune a pretraining run on GLUE / SQuAD / RACE (official files or HF's local cache)
or on real offline stand-ins, under a named protocol, and write per-seed results and a median into the run folder.

    tasks.py      the task registry and where each task's data comes from
    readers.py    the official formats (GLUE TSV, SQuAD JSON, RACE folders) and HF `datasets`
    standins.py   real offline labelled data from pinned registry packages
    features.py   examples -> token ids; qa.py: SQuAD windows and answer spans
    heads.py, module.py   task heads and the LightningModule
    metrics.py    accuracy, F1, MCC, Pearson/Spearman, SQuAD EM/F1
    protocol.py   the protocols in configs/finetune.yaml
    runner.py     `finetune(run_dir, task, data_dir, protocol)`: the loop over seeds and configurations

Nothing is imported here: reading the task registry or the protocols (an experiment file's check, in seconds) must
not pull in Lightning through the runner.
"""
