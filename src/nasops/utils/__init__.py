"""What every stage shares: argument checks, atomic files, registries, the CPU set-up, the
command-line helpers, distributed helpers and plots."""
