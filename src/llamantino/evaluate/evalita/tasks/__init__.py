"""One module per EVALITA 2023 task family; each defines TASKS = {name: Task()}."""
