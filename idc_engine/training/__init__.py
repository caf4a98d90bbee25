"""Stage 4, training: configuration (config), devices and strategy (devices), objectives, the
run's setup, step, controller and actions, checkpoints, validation, summaries, the run
directory's layout (run_dir) and the export."""
