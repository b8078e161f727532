from django.core.management.base import BaseCommand

from agents_app.models import AdapterVersion
from portal import tasks


class Command(BaseCommand):
    help = (
        "Queue the smoke generation of every adapter version still 'uploaded': after the broker was "
        "down, or the base model would not load, when they were uploaded. Safe to repeat."
    )

    def handle(self, *args, **options):
        pending = list(
            AdapterVersion.objects.filter(status=AdapterVersion.Status.UPLOADED)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        for pk in pending:
            tasks.adapter_validate.delay(pk)
        self.stdout.write(f"{len(pending)} uploaded version(s) queued for validation")
