from django.core.management.base import BaseCommand, CommandError

from training_tasks.schedule import canary_schedule_create, training_schedule_create


class Command(BaseCommand):
    help = (
        "Create (or update) the nightly training PeriodicTask and the canary review that Celery beat runs; "
        "see them in the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument("--cron", help="five crontab fields, default VOYAGER_TRAINING_CRON ('30 3 * * *')")

    def handle(self, *args, **options):
        cron = options.get("cron")
        if cron and len(cron.split()) != 5:
            raise CommandError("--cron needs five fields: minute hour day-of-month month day-of-week")
        task, created = training_schedule_create(cron=cron)
        verb = "created" if created else "updated"
        self.stdout.write(f"{verb} periodic task {task.name!r}: {task.task} at '{task.crontab}'")
        review, created = canary_schedule_create()
        verb = "created" if created else "updated"
        self.stdout.write(f"{verb} periodic task {review.name!r}: {review.task} {review.interval}")
