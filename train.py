"""Train the book's LeNet on Fashion-MNIST: `python train.py --help` for options.

The defaults are the book's: batch 256, lr 0.9, 10 epochs, sigmoid and average
pooling. Outputs (metrics, curves, checkpoint, pictures) go to runs/<timestamp>.

The process restarts itself once with XLA and malloc settings that suit this
workload (see lenet_jax/xla_flags.py); settings you made yourself are kept.
"""

import sys

from lenet_jax.xla_flags import reexec_with_tuned_env

if __name__ == "__main__":
    reexec_with_tuned_env(sys.argv)  # before anything starts JAX's backend
    from lenet_jax.cli import main

    sys.exit(main())
