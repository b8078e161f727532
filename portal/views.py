from django.db.models import Count
from django.shortcuts import render

from agents_app.models import Exchange, Persona


def home(request):
    personas = Persona.objects.filter(is_public=True).annotate(exchange_count=Count("exchanges")).order_by("name")[:50]
    recent = Exchange.objects.select_related("persona").order_by("-created_at")[:10]
    return render(request, "portal/home.html", {"personas": personas, "recent": recent})
