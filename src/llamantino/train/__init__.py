"""The training stages (adapt, sft, instruct) and what their loops share."""
