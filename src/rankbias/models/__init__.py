"""Models of the papers reproduced by rankbias."""
