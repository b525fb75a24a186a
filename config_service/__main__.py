"""`python -m config_service`: run the config service with settings from the environment."""

from config_service.server import main
from quarry.process_logging import setup_logging
from quarry.settings import Settings

if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("config", settings.log_level)
    main(settings)
