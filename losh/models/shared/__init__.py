"""What every base model shares: LoSh's own parts and the common encoders (`losh.models` says which)."""
