"""Using a trained model: its predictions written out."""
