"""One module per CLI subcommand: ``register(subparsers)`` adds it, ``args.func(args)`` runs it."""
