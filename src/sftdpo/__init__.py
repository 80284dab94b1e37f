"""sftdpo: expert demonstrations -> SFT -> rollouts -> preferences -> DPO -> evaluation."""

__version__ = "0.1.0"
