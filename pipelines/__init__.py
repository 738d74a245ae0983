"""diffusers integrations of sparge-diffusers, one module per model family."""
