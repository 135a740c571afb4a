"""Wire formats: turning request bodies into named tensors and model outputs into answers."""
