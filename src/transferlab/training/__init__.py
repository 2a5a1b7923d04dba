"""Training one network with Lightning: the LightningModule, fit + test with resume, callbacks, batches, loggers
and device options. Shared by source pretraining and target training."""
