"""Services layer: engines that batch, schedule, retrieve and orchestrate. No HTTP knowledge here."""
