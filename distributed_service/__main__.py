"""`python -m distributed_service`: run the distributed service, settings from the environment."""

from distributed_service.server import main
from quarry.process_logging import setup_logging
from quarry.settings import Settings

if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("distributed", settings.log_level)
    main(settings)
