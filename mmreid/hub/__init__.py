"""What travels with a checkpoint or a dataset: the model factory and tower shapes, processors, model and dataset cards."""
