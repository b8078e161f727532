from django.core.management.base import BaseCommand

from agents_app.services import demo_bootstrap


class Command(BaseCommand):
    help = "Create what a newcomer needs: an administrator, a demo persona and a demo game server (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--admin-username", default="admin")
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="Where the platform is served, for the message."
        )

    def handle(self, *args, admin_username, url, **options):
        report = demo_bootstrap(admin_username=admin_username)
        out = self.stdout
        if report.admin_password:
            out.write(self.style.SUCCESS("Created an administrator (shown only now):"))
            out.write(f"  log in at {url}/admin/ as {report.admin_username!r} with password {report.admin_password!r}")
        else:
            out.write("An administrator exists; to set a new password: python manage.py changepassword <username>")
        if report.persona_created:
            out.write(f"Created the demo persona {report.persona.slug!r} ({report.persona.name}).")
        if report.server_token:
            out.write(
                self.style.SUCCESS(f"Registered the game server {report.server.name!r}. Its token (shown only now):")
            )
            out.write(f"  voyager.token = {report.server_token}")
            out.write(f"  voyager.url = {url.replace('http', 'ws', 1)}/ws/luanti/")
        else:
            out.write(f"The game server {report.server.name!r} exists; a new token can be issued in the admin.")
