"""The command line of `train.py`: options, the run's outputs, the epoch loop.

Exit codes: 0 done; 2 bad option or bad input (one line on stderr, no
traceback); 3 training diverged (the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("lenet_jax")

EXIT_USAGE = 2
EXIT_DIVERGED = 3
CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
# Every file a run writes; --overwrite removes them first so that nothing of the
# earlier run (a checkpoint, say) can pass for the new run's.
RUN_FILES = (
    CHECKPOINT,
    METRICS,
    "config.json",
    "curves.png",
    "predictions.png",
    "confusion.png",
)
FLOAT32_MAX = 3.4028234663852886e38
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes


class UsageError(Exception):
    """A bad option or input, reported as one line with exit code 2."""


class Diverged(Exception):
    """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run trains; stored with every checkpoint so --resume can check it."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.9
    seed: int = 0
    activation: str = "sigmoid"
    pool: str = "avg"


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a positive {kind.__name__}, got {text!r}"
            ) from None
        # float32 is what trains: 1e39 is finite here but infinite there.
        if not (0 < value <= FLOAT32_MAX):
            raise argparse.ArgumentTypeError(
                f"must be a positive {kind.__name__}, got {text}"
            )
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


MAX_SEED = 2**32 - 1  # jax.random.key and numpy's generators both take this range


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer seed, got {text!r}"
        ) from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be between 0 and {MAX_SEED}, got {value}"
        )
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (`train.py: error: ...`), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="train.py",
        description="Train the book's LeNet on Fashion-MNIST with JAX and Flax NNX.",
    )
    # Run options default to None so that --resume can tell the ones given from
    # the ones to take from the saved run; `run_config` fills in the rest.
    d = RunConfig()
    p.add_argument("--epochs", type=_positive(int), help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=_positive(int), help=f"default {d.batch_size}")
    p.add_argument("--lr", type=_positive(float), help=f"default {d.lr}")
    p.add_argument("--seed", type=_seed, help=f"default {d.seed}")
    p.add_argument(
        "--devices",
        type=_positive(int),
        default=None,
        help="how many local devices to train on (default: all); more than one "
        "trains data parallel with pmap",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory with the four gzip'd Fashion-MNIST IDX files (default: "
        "/usr/share/datasets/fashion-mnist, else a TFDS download)",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where metrics, curves and checkpoints go (default: runs/<timestamp>)",
    )
    p.add_argument(
        "--activation", choices=["sigmoid", "relu"], help=f"default {d.activation}"
    )
    p.add_argument("--pool", choices=["avg", "max"], help=f"default {d.pool}")
    p.add_argument(
        "--show-shapes",
        action="store_true",
        help="print the output shape of each of the 12 layers and exit",
    )
    p.add_argument(
        "--resume",
        type=Path,
        metavar="OUTPUT_DIR",
        default=None,
        help="continue the run in OUTPUT_DIR from its last complete epoch",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow writing into an existing output dir, replacing its run",
    )
    p.add_argument(
        "--predict",
        type=Path,
        metavar="CHECKPOINT",
        default=None,
        help="no training: load CHECKPOINT, report test accuracy and draw the "
        "prediction grid and confusion matrix next to it",
    )
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def setup_logging(quiet: bool) -> None:
    """The run's messages go to stdout, one plain line each."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    # TFDS reports through absl; its notes about custom builder configs are noise.
    logging.getLogger("absl").setLevel(logging.ERROR)


class ProgressBar:
    """A one-line bar on a terminal: step, running loss, examples/sec."""

    def __init__(self, epoch: int, epochs: int, stream=sys.stderr):
        self.epoch, self.epochs, self.stream = epoch, epochs, stream
        self.start = time.perf_counter()

    def __call__(self, step: int, steps: int, totals) -> None:
        from lenet_jax.training import COUNT, LOSS_SUM

        width = 24
        done = int(width * step / steps)
        loss = totals[LOSS_SUM] / max(totals[COUNT], 1)
        rate = totals[COUNT] / max(time.perf_counter() - self.start, 1e-9)
        self.stream.write(
            f"\repoch {self.epoch}/{self.epochs} [{'#' * done}{'.' * (width - done)}]"
            f" {step}/{steps} loss {loss:.3f} {rate:,.0f} ex/s"
        )
        if step == steps:
            self.stream.write("\r" + " " * 79 + "\r")
        self.stream.flush()


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def choose_devices(requested: int | None):
    import jax

    available = jax.local_devices()
    if requested is None:
        return available
    if requested > len(available):
        raise UsageError(
            f"--devices {requested}: only {len(available)} local device(s) "
            f"({available[0].platform}) are available"
        )
    return available[:requested]


def describe_devices(devices) -> str:
    kind = devices[0].device_kind
    if len(devices) == 1:
        return f"{devices[0]} ({kind}), jit"
    return f"{len(devices)} x {devices[0].platform} ({kind}), pmap data parallel"


def prepare_output_dir(args) -> tuple[Path, bool]:
    """The run's directory, and whether this run created it.

    An existing one is used only with --overwrite or --resume.
    """
    if args.resume is not None:
        if not (args.resume / CHECKPOINT).is_file():
            raise UsageError(f"--resume {args.resume}: no {CHECKPOINT} in it")
        return args.resume, False
    out = args.output_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(
            f"--output-dir {out} already holds a run; pass --overwrite to replace it "
            f"or --resume {out} to continue it"
        )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return out, created


def _remove_if_empty(out: Path) -> None:
    """Leave no empty directory behind a run that failed before saving anything."""
    try:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    except OSError:
        pass


def load_data(data_dir: Path | None):
    from lenet_jax.data import load_fashion_mnist

    if data_dir is not None:
        check_data_dir(data_dir)
    return load_fashion_mnist(data_dir)


def check_data_dir(data_dir: Path) -> None:
    from lenet_jax.data import missing_files

    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: not a directory")
    missing = missing_files(data_dir)
    if missing:
        raise UsageError(
            f"--data-dir {data_dir}: missing Fashion-MNIST file(s) "
            + ", ".join(missing)
        )


def show_shapes(config: RunConfig) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from lenet_jax.model import LeNet, count_params, layer_shapes

    model = LeNet(activation=config.activation, pool=config.pool, rngs=nnx.Rngs(0))
    for name, shape in layer_shapes(model, jnp.zeros((1, 28, 28, 1), jnp.float32)):
        print(f"{name + ' output shape:':<24}{shape}")
    print(f"{count_params(model):,} parameters")


def check_options(args, config: RunConfig) -> None:
    """Refuse bad options before anything is loaded or written."""
    devices = choose_devices(args.devices)
    if len(devices) > 1 and config.batch_size % len(devices):
        raise UsageError(
            f"--batch-size {config.batch_size} must be a multiple of the "
            f"{len(devices)} devices"
        )
    if args.data_dir is not None:
        check_data_dir(args.data_dir)


def train(args, config: RunConfig, out: Path) -> int:
    """The epoch loop: train, evaluate, log, checkpoint; the book's summary last."""
    from flax import nnx

    from lenet_jax import checkpoint, native, training
    from lenet_jax.model import LeNet

    devices = choose_devices(args.devices)
    log.info("devices: %s", describe_devices(devices))
    data = load_data(args.data_dir)
    log.info("data: %s", data.source)
    log.info(
        "config: %s",
        ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()),
    )
    log.info("output: %s", out)
    log.info("conv blocks: %s", native.describe(config.activation, config.pool))

    rngs = nnx.Rngs(config.seed)
    model = LeNet(activation=config.activation, pool=config.pool, rngs=rngs)
    history: list[dict] = []
    if args.resume is not None:
        model, opt_leaves, history = resume_state(out)
    trainer = training.Trainer(model, lr=config.lr, devices=devices)
    if args.resume is not None:
        trainer.set_opt_state(
            checkpoint.restore_opt_state(trainer.opt_state_template(), opt_leaves)
        )
        log.info("resuming after epoch %d", len(history))

    compile_seconds = trainer.warm_up(
        data.train_images, data.train_labels, config.batch_size
    )
    log.info("compiled the train step in %.1f s (not counted below)", compile_seconds)
    n = len(data.train_images)
    for epoch in range(len(history) + 1, config.epochs + 1):
        order = training.epoch_permutation(n, config.seed, epoch)
        bar = ProgressBar(epoch, config.epochs) if _show_bar(args) else None
        totals, seconds = trainer.train_epoch(
            data.train_images, data.train_labels, order, config.batch_size, bar
        )
        if totals[training.FIRST_BAD_STEP] >= 0:
            kept = (
                f"the checkpoint of epoch {len(history)} in {out} is kept"
                if history
                else "no epoch completed, so no checkpoint was written"
            )
            raise Diverged(
                f"training diverged: the loss became {totals[training.LOSS_SUM]:.3g}"
                f" at epoch {epoch}, step {int(totals[training.FIRST_BAD_STEP])}, "
                f"with lr {config.lr}; {kept}"
            )
        count = totals[training.COUNT]
        record = {
            "epoch": epoch,
            "train_loss": float(totals[training.LOSS_SUM] / count),
            "train_acc": float(totals[training.CORRECT] / count),
            "test_acc": trainer.evaluate(data.test_images, data.test_labels),
            "train_seconds": seconds,
            "examples": int(count),
        }
        history.append(record)
        if record["train_loss"] > 10 * CHANCE_LOSS:
            log.warning(
                "warning: train loss %.1f is far above chance level (ln 10 = %.2f); "
                "the learning rate %g may be too high",
                record["train_loss"],
                CHANCE_LOSS,
                config.lr,
            )
        log.info(
            "epoch %d/%d  train loss %.4f  train acc %.4f  test acc %.4f  %.0f ex/s",
            epoch,
            config.epochs,
            record["train_loss"],
            record["train_acc"],
            record["test_acc"],
            count / seconds,
        )
        save_epoch(out, trainer, config, history)

    write_predictions(trainer.model(), data, out)
    last = history[-1]
    examples = sum(h["examples"] for h in history)
    seconds = sum(h["train_seconds"] for h in history)
    log.info(
        "loss %.3f, train acc %.3f, test acc %.3f",
        last["train_loss"],
        last["train_acc"],
        last["test_acc"],
    )
    log.info(
        "%.1f examples/sec on %s (compilation excluded)",
        examples / seconds,
        describe_devices(devices).split(",")[0],
    )
    return 0


def _show_bar(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def save_epoch(out: Path, trainer, config: RunConfig, history: list[dict]) -> None:
    """After an epoch: checkpoint, metrics file and curves, each written whole.

    An earlier run's files in out (--overwrite) are removed only here, when the
    new run has its first epoch to save, so a run that fails earlier loses nothing.
    """
    from lenet_jax import checkpoint, plots

    if len(history) == 1:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    checkpoint.save_checkpoint(
        out / CHECKPOINT,
        trainer.model(),
        trainer.host_opt_state(),
        meta={"config": dataclasses.asdict(config), "history": history},
    )
    lines = "".join(json.dumps(h) + "\n" for h in history)
    tmp = out / (METRICS + ".tmp")
    tmp.write_text(lines)
    tmp.replace(out / METRICS)
    plots.plot_curves(history, out / "curves.png", title=_title(config))


def _title(config: RunConfig) -> str:
    return (
        f"LeNet ({config.activation}, {config.pool} pool), lr {config.lr}, "
        f"batch {config.batch_size}"
    )


def resume_state(out: Path):
    """The model, optimizer leaves and history saved in out's checkpoint."""
    from lenet_jax import checkpoint

    _, opt_leaves, meta = checkpoint.load_checkpoint(out / CHECKPOINT)
    return checkpoint.load_model(out / CHECKPOINT), opt_leaves, meta["history"]


def run_config(args) -> RunConfig:
    """The options given on the command line over the defaults, or, with --resume,
    over the saved run's; a resumed run may only change its number of epochs."""
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(RunConfig)
        if getattr(args, field.name) is not None
    }
    if args.resume is None:
        return RunConfig(**given)
    from lenet_jax import checkpoint

    if not (args.resume / CHECKPOINT).is_file():
        raise UsageError(f"--resume {args.resume}: no {CHECKPOINT} in it")
    if args.output_dir is not None or args.overwrite:
        raise UsageError(
            "--resume continues a run in its own directory; it takes no "
            "--output-dir or --overwrite"
        )
    _, _, meta = checkpoint.load_checkpoint(args.resume / CHECKPOINT)
    try:
        saved = RunConfig(**meta["config"])
        done = len(meta["history"])
    except (KeyError, TypeError) as e:
        raise UsageError(
            f"--resume {args.resume}: {CHECKPOINT} holds no run configuration ({e})"
        ) from e
    if given.get("epochs", saved.epochs) <= done:
        raise UsageError(
            f"--resume {args.resume}: the run has already completed {done} epochs; "
            "ask for more with --epochs"
        )
    for name, value in given.items():
        if name != "epochs" and value != getattr(saved, name):
            raise UsageError(
                f"--resume {args.resume}: the run used {name}="
                f"{getattr(saved, name)!r}, this command asks for {value!r}"
            )
    return dataclasses.replace(saved, **given)


def write_predictions(model, data, out: Path) -> float:
    """Test accuracy, the prediction grid and the confusion matrix into out."""
    import jax
    import numpy as np

    from lenet_jax import plots

    predict = jax.jit(lambda x: jax.numpy.argmax(model(x), axis=-1))
    predictions = np.concatenate(
        [
            np.asarray(predict(data.test_images[i : i + 2000]))
            for i in range(0, len(data.test_images), 2000)
        ]
    )
    labels = data.test_labels
    plots.plot_predictions(
        data.test_images[:16],
        labels[:16],
        predictions[:16],
        data.class_names,
        out / "predictions.png",
    )
    counts = plots.confusion_matrix(labels, predictions, len(data.class_names))
    plots.plot_confusion(counts, data.class_names, out / "confusion.png")
    return float(np.mean(predictions == labels))


def predict(args) -> int:
    """--predict: the pictures and test accuracy of a saved model, no training."""
    from lenet_jax.checkpoint import load_model

    fields = dataclasses.fields(RunConfig)
    given = [f.name for f in fields if getattr(args, f.name) is not None]
    if given or args.resume is not None:
        names = ", ".join("--" + n.replace("_", "-") for n in given) or "--resume"
        raise UsageError(f"--predict trains nothing; it takes no {names}")
    model = load_model(args.predict)
    out = args.output_dir or args.predict.parent
    if args.output_dir is not None and out.resolve() != args.predict.parent.resolve():
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output-dir {out}: exists and is not a directory")
        taken = [name for name in RUN_FILES if (out / name).exists()]
        if taken and not args.overwrite:
            raise UsageError(
                f"--output-dir {out} holds another run's {', '.join(taken)}; pass "
                "--overwrite to replace its pictures"
            )
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.data_dir)
    accuracy = write_predictions(model, data, out)
    log.info("test acc %.3f; predictions.png and confusion.png in %s", accuracy, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from lenet_jax.checkpoint import CheckpointError
    from lenet_jax.data import DataError

    try:
        config = run_config(args)
        if args.show_shapes:
            show_shapes(config)
            return 0
        if args.predict is not None:
            return predict(args)
        check_options(args, config)
        out, created = prepare_output_dir(args)
        try:
            return train(args, config, out)
        finally:
            if created:
                _remove_if_empty(out)
    except (UsageError, DataError, CheckpointError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`train.py --show-shapes | head -3`): stop quietly,
        # and keep Python from complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # an output dir that can't be written, a full disk, ...
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Diverged as e:
        print(f"train.py: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print(
            "train.py: interrupted; the last complete epoch is saved", file=sys.stderr
        )
        return 130
