"""Training stages: domain-adaptive MLM pretraining and task fine-tuning, on Transformers' Trainer."""
