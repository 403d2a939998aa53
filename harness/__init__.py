"""RoBERTa ablation harness: data, model, pretraining, fine-tuning and the experiment grid."""
