"""The data plane: model loaders, the model server and the inference gateway."""
