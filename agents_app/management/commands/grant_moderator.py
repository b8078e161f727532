from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from agents_app.moderation import moderator_grant


class Command(BaseCommand):
    help = "Make a user a moderator: the 'moderator' group, and staff so the admin lets them in."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        moderator_grant(user=user)
        self.stdout.write(f"{username} is a moderator")
