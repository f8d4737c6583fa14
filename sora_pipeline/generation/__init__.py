"""One day's generations without Dagster: plan → claim → submit or resume → poll → result → archive/probe
(`runner.GenerationRunner`, its inputs and outcomes in `records`)."""
