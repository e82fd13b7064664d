"""Using a trained model on data it has not seen: store embeddings, label predictions, reconstructions of files."""
