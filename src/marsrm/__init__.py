"""marsrm: reward models trained with margin-aware data augmentation (MARS)."""

__version__ = "0.1.0"


def load_reward_model(path, **kwargs):
    """Load a saved marsrm reward model (either mode); see `marsrm.model.load_reward_model`."""
    from marsrm.model import load_reward_model as _load

    return _load(path, **kwargs)


__all__ = ["load_reward_model", "__version__"]
