from django.core.management.base import BaseCommand

from agents_app.services import rating_stats_rebuild


class Command(BaseCommand):
    help = (
        "Recompute the persona rating statistics (per version per day, per reply) from the ratings: "
        "after ratings were loaded in bulk, bypassing the rating services."
    )

    def handle(self, *args, **options):
        days, exchanges = rating_stats_rebuild()
        self.stdout.write(f"{days} persona-day rows, {exchanges} rated replies")
