"""`python -m gateway`: run the gateway with settings from QUARRY_* variables."""

from gateway.server import main
from quarry.process_logging import setup_logging
from quarry.settings import Settings

if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("gateway", settings.log_level)
    main(settings)
