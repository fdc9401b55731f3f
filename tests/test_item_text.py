"""The item text keeps what questions are about, for every common schema.org family, formatted for people."""
from nlweb_local.core.item_text import duration, item_text, number


def test_an_organisation_subtype_keeps_specialty_address_hours_and_phone():
    text = item_text({
        "@type": "MedicalClinic", "name": "Cedar Clinic", "medicalSpecialty": "https://schema.org/Dermatology",
        "address": {"@type": "PostalAddress", "streetAddress": "1 Main St", "addressLocality": "Springfield",
                    "addressRegion": "IL", "postalCode": "62701", "addressCountry": {"@type": "Country", "name": "US"}},
        "openingHoursSpecification": [{"@type": "OpeningHoursSpecification", "opens": "09:00:00", "closes": "17:00:00",
                                       "dayOfWeek": ["https://schema.org/Monday", "https://schema.org/Friday"]}],
        "telephone": "+1-555-0100", "logo": "https://x.example/logo.png", "geo": {"latitude": 1, "longitude": 2}})
    assert text.startswith("MedicalClinic: Cedar Clinic")
    for fact in ("Dermatology", "1 Main St, Springfield, IL, 62701, US", "Mo,Fr 09:00–17:00", "+1-555-0100"):
        assert fact in text, (fact, text)
    assert "logo" not in text and "latitude" not in text


def test_ratings_prices_durations_and_dates_read_as_people_write_them():
    movie = item_text({"@type": "Movie", "name": "M", "aggregateRating": {"ratingValue": 57.00000000000001},
                       "duration": "PT1H38M"})
    assert "rating: 57/100" in movie and "1 h 38 min" in movie and "0000" not in movie
    recipe = item_text({"@type": "Recipe", "name": "Soup", "totalTime": "PT45M",
                        "aggregateRating": {"ratingValue": "4.6", "bestRating": "5", "ratingCount": "120"},
                        "nutrition": {"@type": "NutritionInformation", "calories": "250 kcal"}})
    assert "totalTime: 45 min" in recipe and "4.6/5 (120 ratings)" in recipe and "calories 250 kcal" in recipe
    event = item_text({"@type": "MusicEvent", "name": "Jazz", "startDate": "2025-06-01T19:00:00-07:00",
                       "location": {"@type": "Place", "name": "Blue Hall", "address": {"addressLocality": "Austin"}},
                       "offers": {"@type": "Offer", "price": "0", "priceCurrency": "USD"}})
    assert "startDate: 2025-06-01 19:00" in event and "Blue Hall, Austin" in event and "offers: free" in event
    product = item_text({"@type": "Product", "name": "Tent", "weight": {"value": 1.2, "unitText": "kg"},
                         "offers": {"@type": "AggregateOffer", "lowPrice": 99.5, "highPrice": 150, "priceCurrency": "EUR"}})
    assert "99.5–150 EUR" in product and "1.2 kg" in product


def test_number_and_duration_helpers():
    assert number(57.00000000000001) == "57" and number(4.35) == "4.35" and number(3) == "3" and number(float("nan")) == ""
    assert duration("PT1H30M") == "1 h 30 min" and duration("P2D") == "2 days" and duration("Prague") is None


def test_the_text_respects_its_budget_and_unknown_types_get_generic_fields():
    long = {"@type": "Thing", "name": "T", "description": "word " * 500, "author": {"name": "Ann"}}
    assert len(item_text(long, 200)) <= 200
    assert "author: Ann" in item_text({"@type": "Widget", "name": "W", "author": {"name": "Ann"}})
