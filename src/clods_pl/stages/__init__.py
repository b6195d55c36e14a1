"""The three pipeline stages, each a LightningModule + LightningDataModule (thin: losses, optimisers, logging)."""
