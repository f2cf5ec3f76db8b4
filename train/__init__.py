"""StyleGAN2 training: networks, losses, augmentation, datasets, the loop, snapshots."""
