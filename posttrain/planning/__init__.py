"""Planning before a GPU-hour is spent: memory per device by term, fit, and time (`posttrain plan`)."""
