"""llamantino: the LLaMAntino pipeline (Basile et al., 2023), runnable.

Clean an Italian web corpus, adapt a LLaMA 2 model to Italian with QLoRA continued
pretraining, translate chat data, fine-tune chat and instruction models, release adapters
and exact weight differences, rebuild the published models, and evaluate them.
"""

__version__ = "0.1.0"
