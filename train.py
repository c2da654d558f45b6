"""Train the book's LeNet on Fashion-MNIST: `python train.py --help` for options.

The defaults are the book's: batch 256, lr 0.9, 10 epochs, sigmoid and average
pooling. Outputs (metrics, curves, checkpoint, pictures) go to runs/<timestamp>.
"""

import sys

from lenet_jax.cli import main

if __name__ == "__main__":
    sys.exit(main())
