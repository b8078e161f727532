import asyncio
import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.service import make_backend
from inference.worker import InferenceWorker


class Command(BaseCommand):
    help = "Serve inference requests from the channel layer. Run several side by side; SIGTERM drains."

    def add_arguments(self, parser):
        parser.add_argument(
            "--backend",
            choices=["engine", "echo"],
            default=None,
            help="engine (the model, default) or echo (answers with the player's words)",
        )

    def handle(self, *args, backend, **options):
        if not settings.REDIS_URL and not settings.VOYAGER_EMBEDDED_WORKER:
            raise CommandError("REDIS_URL is not set: a separate worker cannot reach the web process")
        if not settings.REDIS_URL:
            raise CommandError(
                "REDIS_URL is not set: with the in-memory channel layer the engine runs inside the web "
                "process (bin/voyager run); a separate worker needs Redis"
            )
        logging.basicConfig(level=settings.LOG_LEVEL)
        asyncio.run(self._serve(make_backend(backend)))

    async def _serve(self, backend):
        worker = InferenceWorker(backend)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        running = asyncio.create_task(worker.run())
        await worker.started.wait()
        self.stdout.write(f"inference worker {worker.worker_id} ({backend.base_model_id}) ready")
        self.stdout.flush()
        await running
