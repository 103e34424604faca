"""The contract between web/ and workers/ (settings, Redis keys, state, commands, errors, task
names): see shared/README.md for what lives where and where a change of each kind goes."""
